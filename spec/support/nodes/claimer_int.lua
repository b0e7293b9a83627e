-- Node program for the Ctrl-C spec of a path claim: joins, prints
-- "waiting", waits until it knows node `wait_for` (a node that never
-- answers claims), prints "claiming", then spawns an isolate at /claimed from the main state (the
-- claim waits for wait_for's answer) and prints "spawned" or "error: <msg>",
-- then "alive" once the node still works (its control isolate answers).
local common = require("support.nodes.common")
local o = common.parse(arg)
local cluster = common.join(o)
local W = require("support.wait")
common.say("waiting")
W.wait_until(function()
  for _, name in ipairs(cluster:nodes()) do
    if name == o.wait_for then return true end
  end
end, 15)
common.say("claiming")
local ok, err = pcall(cluster.spawn_isolate, cluster, function(context)
  context:on_message(function() return "here" end)
end, nil, { path = "/claimed" })
common.say(ok and "spawned" or "error: " .. tostring(err))
local ctl = cluster:lookup_isolate("/ctl/" .. o.name)
common.say(ctl and ctl:request("ping", 10) == "pong" and "alive" or "broken")
cluster:shutdown(10)
