"""The gRPC write API (WriteToLog, WriteBatch, BulkDelete): the server, its service, messages and checks."""
