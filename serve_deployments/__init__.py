"""Answer: Ray Serve model deployments, the HTTP API and explanations."""
