-- A node program for the harness's own spec: it does not join a multi-node
-- cluster (so it runs without the NATS transport). It prints its arguments
-- and whether isolate_cluster loads, then serves a single-node cluster for
-- lifetime seconds (default 120) or until a signal ends the process.
--   probe.lua name=N lifetime=S [exit=CODE] [say=LINE]
--   (exit: exit at once with CODE; say: print LINE first)
local common = require("support.nodes.common")
local o = common.parse(arg)
if o.say then common.say(o.say) end
if o.exit then
  common.say("exiting " .. o.exit)
  os.exit(tonumber(o.exit))
end
local keys = {}
for k in pairs(o) do keys[#keys + 1] = k end
table.sort(keys)
for _, k in ipairs(keys) do common.say("arg " .. k .. "=" .. o[k]) end
local ic = require("isolate_cluster")
local cluster = ic.single_node({ workers = 1 })
local echo = cluster:spawn_isolate(function(context)
  context:on_message(function(m) return m end)
end)
common.say("echo " .. tostring(echo:request("hello", 10)))
common.say("ready " .. (o.name or "probe"))
cluster:run(tonumber(o.lifetime or "120"))
common.say("stopped " .. tostring(cluster:shutdown(5)))
