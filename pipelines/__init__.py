"""Pipeline definitions and how to run them: locally (KFP local runner) or compiled for Vertex AI."""
