"""Mutation fuzzing of the volume readers: seed files (``seeds``), seeded mutations of their bytes
(``mutate``) and a runner that opens each mutated file in a child process with a time and memory
limit and classifies what happened (``runner``). ``python main.py bench fuzz`` prints its report."""
