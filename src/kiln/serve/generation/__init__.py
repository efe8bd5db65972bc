"""Text generation served with continuous batching and an OpenAI-compatible API."""
