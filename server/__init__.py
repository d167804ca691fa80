"""stenoxdp.server: the query server, mutual TLS only.

Modules
  certs.py         CA / server / client certificates (Stenographer's file layout), issue,
                   revoke -> crl.pem; Revocations reloads the CRL when it changes
  core.py          QueryService: limits, concurrency slots, the engine thread, watchdog, audit
  grpc_server.py   steno.Stenographer/RetrievePcap (wire compatible) + stenoxdp.v1.StenoXdp
  https_server.py  Stenographer's HTTPS API (POST /query, /debug/stats, /debug/config)
  daemon.py        serve(stores, certs_dir, host, port, grpc_port, ...) -> Handle(.stop())
  client.py        remote_query(server, certs_dir, text, ...) over our gRPC API
  audit.py         one line per query / refused connection
  bench.py         MB/s and first-byte latency over both transports

Refusals
  no client certificate, another CA, expired, no clientAuth usage -> the TLS handshake fails
  (both transports); revoked (serial in crl.pem, reloaded within 0.5 s) -> gRPC UNAUTHENTICATED,
  HTTPS 403, on every request, no restart needed.

Failures (never a silent cut-off)
  bad query       gRPC INVALID_ARGUMENT / HTTP 400, the parser's message
  busy            no slot within slot_wait (5 s): RESOURCE_EXHAUSTED / 503 + Retry-After
  too large       answer over max_answer_bytes (and the client asked for no smaller limit):
                  data so far, then RESOURCE_EXHAUSTED / the chunked body left unterminated
                  (curl: "(18) transfer closed with outstanding read data remaining")
  too long        max_seconds: DEADLINE_EXCEEDED / unterminated body
  stalled client  no progress for send_timeout (60 s): dropped, slot freed (audit says why)
  Limits the client asks for (Steno-Limit-*, max_size, limit_*) truncate at a packet boundary
  as in Stenographer; gRPC reports it (summary.truncated / trailer steno-truncated).

Priorities: the engine thread, HTTPS connection threads and gRPC pool threads run at nice +10
(per-thread on Linux); each query holds at most queue_chunks engine chunks in memory.
"""
