"""The Feast repository of streamscore: definitions, offline source builders and the store API services use.

`feature_repo.store` is the only module that talks to Feast at run time; `feature_repo.batch` builds the
offline sources from the Parquet history with pandas alone. See docs/features.md.
"""
