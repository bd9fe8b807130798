"""What the app says about itself: name, version, the research-use notice, and where its
resources (demo study, default model and its model card) live."""
from __future__ import annotations

from engine.paths import APP_NAME, DEFAULT_MODEL_DIR, ORGANISATION, RESOURCES  # noqa: F401 - Qt's names are the engine's
from engine.version import version  # noqa: F401 - the app's version is the engine's

ORGANISATION_DOMAIN = "synermedgen.org"
RESEARCH_NOTICE = "Research use only, not for diagnosis"
SYNTHETIC_BANNER = "SYNTHETIC — research use only"

DEMO_DIR = RESOURCES / "demo"
MODEL_CARD = DEFAULT_MODEL_DIR / "metadata.json"


def about_html() -> str:
    card = str(MODEL_CARD) if MODEL_CARD.exists() else f"{MODEL_CARD} (no default model installed yet)"
    return (f"<h3>{APP_NAME} {version()}</h3>"
            "<p>Cross-modality synthesis of medical volumes with the SynerMedGen unified "
            "understanding-and-generation model.</p>"
            f"<p><b>{RESEARCH_NOTICE}.</b> Synthetic images are not real acquisitions.</p>"
            f"<p>Model card: <code>{card}</code></p>")
