"""The Gradio front end: Blocks, and adapters between Gradio values and core types."""
