"""The gRPC write API (WriteToLog, WriteBatch, BulkDelete): server, service and client helpers."""
