"""SynerMedGen Studio, the Qt application: state (plain-Python view-models), views, panels,
workers (the one bridge from Qt threads to engine calls) and settings. Imports the engine only."""
