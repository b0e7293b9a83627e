-- A node for spec/multinode/node_spec.lua: joins the cluster (support
-- nodes/common.lua: control isolate at /ctl/<name>) and spawns
--   /svc/echo    request: returns {echo = msg, node = <this node>, from = sender.node};
--                "fail" raises "echo failed";
--                {collect = n, reply_to = ref} : counts plain messages {i = k} and
--                sends reply_to {seen = n, in_order = bool} once n have arrived
--   /svc/slow     answers a request after 30 s
--   /svc/props   with properties {color = "blue", n = 42}
-- and prints "ready <name>".
local common = require("support.nodes.common")
local o = common.parse(arg)
local cluster = common.join(o)
cluster:spawn_isolate(function(context)
  local expect, got, in_order, report = 0, 0, true, nil
  context:on_message(function(msg, sender)
    if type(msg) == "table" and msg.collect then
      expect, got, in_order, report = msg.collect, 0, true, msg.reply_to
      return "collecting"
    end
    if type(msg) == "table" and msg.i then
      got = got + 1
      if msg.i ~= got then in_order = false end
      if got == expect then report:send({ seen = got, in_order = in_order }) end
      return nil
    end
    if msg == "fail" then error("echo failed") end
    return { echo = msg, node = context.isolate_ref.node, from = sender and sender.node }
  end)
end, nil, { path = "/svc/echo" })
cluster:spawn_isolate(function(context)
  context:on_message(function() context:sleep(30) return "late" end)
end, nil, { path = "/svc/slow" })
cluster:spawn_isolate(function(context)
  context:on_message(function() end)
end, { color = "blue", n = 42 }, { path = "/svc/props" })
common.serve(cluster, o)
