"""Where models live and run in production: registries (local and Vertex AI behind one interface), deployment,
pipeline jobs and schedules on Vertex AI, and the Google Cloud plumbing they share."""
