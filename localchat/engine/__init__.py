"""Everything that touches torch and transformers. Knows no UI and no HTTP."""
