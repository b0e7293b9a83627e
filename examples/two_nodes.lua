-- The quick start split across two nodes (two processes) of one multi-node
-- cluster. Start a NATS server, then the two nodes, in any order:
--
--   nats-server -a 127.0.0.1 -p 4222 &
--   lua5.4 examples/two_nodes.lua receiver &
--   lua5.4 examples/two_nodes.lua senders
--
-- (optional third argument: the server URL, default nats://127.0.0.1:4222).
-- The receiver node prints the three messages it gets, one from the senders
-- node's main state and one from each sender isolate there, then shuts down;
-- the senders node sees it leave and shuts down too.
local ic = require("isolate_cluster")

local role, url = arg[1], arg[2] or "nats://127.0.0.1:4222"
if role ~= "receiver" and role ~= "senders" then
  io.stderr:write("usage: lua5.4 examples/two_nodes.lua receiver|senders [nats-url]\n")
  os.exit(2)
end

local cluster = ic.node({ nats = url, cluster = "quickstart", name = role, workers = 2 })

if role == "receiver" then
  cluster:spawn_isolate(function(context)
    print("receiver started on node " .. context.isolate_ref.node)
    local got = 0
    context:on_message(function(msg, sender)
      print("received message: " .. msg .. " (from node " .. tostring(sender and sender.node) .. ")")
      got = got + 1
      if got == 3 then context:shutdown_cluster() end
    end)
  end, { type = "receiver" }, { path = "/receiver" })
else
  -- A sender finds the receiver when it comes up, on whichever node
  -- (existing = true: also when it is up already).
  local function sender(context)
    print("sender started id = " .. context:property("id"))
    context:on_isolate_up(function(ref)
      if ref:property("type") == "receiver" then
        ref:send("message from sender " .. context:property("id"))
      end
    end, { existing = true })
    -- when the receiver's node has left, this node is done as well
    context:on_node_down(function(name)
      if name == "receiver" then context:shutdown_cluster() end
    end)
  end
  cluster:spawn_isolate(sender, { id = 1 })
  cluster:spawn_isolate(sender, { id = 2 })
  local receiver_ref = cluster:lookup_isolate("/receiver", 30)
  if not receiver_ref then
    io.stderr:write("no receiver node within 30 s\n")
    cluster:shutdown()
    os.exit(1)
  end
  receiver_ref:send("message from main isolate")
end

cluster:run(60)
cluster:shutdown()
print(role .. " node stopped")
