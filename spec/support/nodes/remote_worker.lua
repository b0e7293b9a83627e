-- A module that names an entry function, for spawning on another node by
-- module name: cluster:spawn_isolate("support.nodes.remote_worker", props,
-- { node = "b" }). The isolate answers
--   "info"             -> { node = its ref.node, path = its ref.path, props = its properties }
--   { op = "crash" }   -> (sent, not requested) raises, so it goes down with "error: ..."
--   { op = "stop" }    -> stops with reason "normal"
return function(context)
  context:on_message(function(msg)
    if msg == "info" then
      local ref = context.isolate_ref
      return { node = ref.node, path = ref.path, props = context:properties() }
    end
    if type(msg) == "table" and msg.op == "crash" then error("crash on purpose") end
    if type(msg) == "table" and msg.op == "stop" then return context:stop("normal") end
    return msg
  end)
end
