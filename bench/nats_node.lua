-- The remote node of bench/bench_nats.lua (started by it, one process):
-- joins the cluster and serves /sink (counts the messages it gets; the
-- request "count" answers how many came before it) and /echo (answers each
-- request with its message). Arguments as spec/support/nodes/common.lua's.
local common = require("support.nodes.common")
local o = common.parse(arg)
local cluster = common.join(o)
cluster:spawn_isolate(function(context)
  local n = 0
  context:on_message(function(msg)
    if msg == "count" then return n end
    n = n + 1
  end)
end, nil, { path = "/sink", mailbox = 10000000 })
cluster:spawn_isolate(function(context)
  context:on_message(function(msg) return msg end)
end, nil, { path = "/echo" })
common.serve(cluster, o)
