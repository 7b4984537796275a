"""The SQS-compatible log of namespaces with ``backend: sqs`` (Amazon SQS, or ElasticMQ in the local stack)."""
