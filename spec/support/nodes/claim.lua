-- Node program: joins the cluster and tries to claim path= (default "/a")
-- with an isolate that answers requests with its node's name. Prints
-- "claimed <path>" or "claim failed: <error>", then "ready <name>".
local common = require("support.nodes.common")
local o = common.parse(arg)
local cluster = common.join(o)
local path = o.path or "/a"
local ok, err = pcall(cluster.spawn_isolate, cluster, function(context)
  local node = context:property("node")
  context:on_message(function() return node end)
end, { node = o.name }, { path = path })
if ok then
  common.say("claimed " .. path)
else
  common.say("claim failed: " .. tostring(err))
end
common.serve(cluster, o)
