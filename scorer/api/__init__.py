"""The ad-hoc HTTP API: a second transport over the scoring engine (`create_app`)."""
