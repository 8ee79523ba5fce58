"""The base room: settings, errors, ports, contracts (typed records, row columns, the model-family
registry) and PostgreSQL access. It imports nothing else of fraudray's; every other room imports it."""
