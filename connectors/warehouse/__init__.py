"""The analytics store: Kafka topics into DuckDB (or PostgreSQL), exactly-once, for the Data Query API."""
