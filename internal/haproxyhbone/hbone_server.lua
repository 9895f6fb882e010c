-- HBONE receiving side for stock haproxy 2.6 (benchmarks/netns, "haproxy"
-- reference system).
--
-- haproxy terminates the mTLS HTTP/2 CONNECT itself (mode http frontend)
-- and relays it as an HTTP/1 CONNECT into an internal tcp frontend. This
-- action runs there: it waits for the whole "CONNECT ip:port HTTP/1.1"
-- head, removes it, answers "200", and leaves the authority in two
-- variables for set-dst/set-dst-port. Every payload byte is moved by
-- haproxy, not by Lua.
core.register_action("hbone_accept", { "tcp-req" }, function(txn)
  local d = txn.req:data()
  local e = d and string.find(d, "\r\n\r\n", 1, true)
  if not e then return act.YIELD end
  local ip, port = string.match(d, "^CONNECT (%d+%.%d+%.%d+%.%d+):(%d+) HTTP/1%.1\r\n")
  if not ip then
    txn.res:send("HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
    return act.DENY
  end
  txn.req:remove(0, e + 3)
  txn:set_var("txn.hbone_ip", ip)
  txn:set_var("txn.hbone_port", tonumber(port))
  txn.res:send("HTTP/1.1 200 OK\r\n\r\n")
  return act.CONTINUE
end)
