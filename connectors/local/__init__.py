"""The embedded stack: real Kafka, Cassandra and Elasticsearch run as local JVM processes."""
