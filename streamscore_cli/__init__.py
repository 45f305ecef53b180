"""The umbrella CLI `streamscore`: wires the services, holds no logic of its own."""
