-- Node program: joins the cluster and prints what a watcher isolate sees:
--   "node_up <name>", "node_down <name> <reason>",
--   "isolate_up <path> <node>", "isolate_down <path> <node> <reason>"
-- (the reason's first line only). Prints "ready <name>" once the watcher
-- is listening.
local common = require("support.nodes.common")
local o = common.parse(arg)
local cluster = common.join(o)
local watcher = cluster:spawn_isolate(function(context)
  local function say(s) io.stdout:write(s .. "\n"); io.stdout:flush() end
  local function first_line(s) return (tostring(s):match("^[^\n]*")) end
  context:on_node_up(function(name) say("node_up " .. name) end)
  context:on_node_down(function(name, reason) say("node_down " .. name .. " " .. first_line(reason)) end)
  context:on_isolate_up(function(ref) say("isolate_up " .. tostring(ref.path) .. " " .. tostring(ref.node)) end)
  context:on_isolate_down(function(ref, reason)
    say("isolate_down " .. tostring(ref.path) .. " " .. tostring(ref.node) .. " " .. first_line(reason))
  end)
  context:on_message(function() return "listening" end)
end, nil, { path = "/watcher/" .. o.name })
assert(watcher:request("ping", 10) == "listening")
common.serve(cluster, o)
