-- HBONE client glue for stock haproxy 2.6 (interop tests and the benchmark harness).
--
-- haproxy relays an HTTP/1 CONNECT onto an HTTP/2 CONNECT over mTLS by
-- itself, but cannot start a CONNECT for a plain TCP client. These two
-- actions add only that: the CONNECT head in front of the client's bytes,
-- and the removal of the "HTTP/1.1 200" head from the reply. haproxy moves
-- every payload byte.

-- Request side of the plain TCP frontend: prepend the CONNECT head. The
-- forwarded header carries the plain client's address (HBONE's
-- "forwarded: for=<src>").
core.register_action("hbone_connect", { "tcp-req" }, function(txn, authority)
  local src = txn.f:src()
  local fwd = "for=" .. src
  if string.find(src, ":", 1, true) then
    fwd = 'for="[' .. src .. ']"'
  end
  txn.req:prepend("CONNECT " .. authority .. " HTTP/1.1\r\n" ..
    "Host: " .. authority .. "\r\n" ..
    "Forwarded: " .. fwd .. "\r\n\r\n")
  return act.CONTINUE
end, 1)

-- Response side: wait for the whole response head, let a 2xx through
-- without its head, and close the client's connection on anything else.
core.register_action("hbone_strip_200", { "tcp-res" }, function(txn)
  local d = txn.res:data()
  local e = d and string.find(d, "\r\n\r\n", 1, true)
  if not e then return act.YIELD end
  if not string.find(d, "^HTTP/1%.1 2%d%d ") then return act.DENY end
  txn.res:remove(0, e + 3)
  return act.CONTINUE
end)
