"""Inference runtime: preprocessing, vision sessions, model loading and caching."""
