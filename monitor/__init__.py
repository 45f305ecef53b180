# The shared package first: it settles prometheus_client's mode before anything else imports it.
import streamscore  # noqa: F401
