-- The quick start of isolate_cluster: the original library's example, in Lua.
local ic = require("isolate_cluster")

-- The entry point for the receiver isolate.
local function receiver(context)
  print("receiver started")

  -- register a listener for messages sent to this isolate.
  context:on_message(function(msg) print("received message: " .. msg) end)
end

-- The entry point for the sender isolates.
local function sender(context)
  print("sender started id = " .. context:property("id"))

  -- register a listener for isolate up events. a ref to the newly spawned isolate is given to
  -- the listener. the listener has access to the properties of the spawned isolate and can send
  -- messages to it via the ref.
  context:on_isolate_up(function(ref)
    if ref:property("type") == "receiver" then
      ref:send("message from sender " .. context:property("id"))
    end
  end)
end

-- create a single node cluster.
local cluster = ic.single_node()

-- spawn 3 isolates. an entry function gets the isolate's context; optionally, properties can be
-- provided. The properties can be read from the context and from the ref.
cluster:spawn_isolate(sender, { id = 1 })
cluster:spawn_isolate(sender, { id = 2 })
local receiver_ref = cluster:spawn_isolate(receiver, { type = "receiver" })

-- send a message to the isolate using its ref.
receiver_ref:send("message from main isolate")

-- When the script ends, the messages already sent are delivered and the cluster shuts down.
