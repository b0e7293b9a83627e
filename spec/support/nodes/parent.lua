-- Node program: joins the cluster and serves /parent, an isolate that
-- spawns children on other nodes. Requests:
--   { op = "spawn", node = N, path = P [, detached = true] }
--        spawns support.nodes.remote_worker on node N at path P as its
--        child (opts.detached as given) and returns the child's ref
--   "count" -> how many children it spawned
-- Prints "ready <name>" once /parent is up. Arguments: see common.lua.
local common = require("support.nodes.common")
local o = common.parse(arg)
local cluster = common.join(o)
cluster:spawn_isolate(function(context)
  local spawned = 0
  context:on_message(function(msg)
    if msg == "count" then return spawned end
    if type(msg) == "table" and msg.op == "spawn" then
      spawned = spawned + 1
      return context:spawn_isolate("support.nodes.remote_worker", { by = "parent" },
        { node = msg.node, path = msg.path, detached = msg.detached })
    end
    error("parent: unknown request " .. tostring(msg))
  end)
end, nil, { path = "/parent" })
common.serve(cluster, o)
