-- A module that names an entry function, for spawning on another node by
-- module name: cluster:spawn_isolate("support.nodes.remote_worker", props,
-- { node = "b" }). The isolate answers
--   "info"             -> { node = its ref.node, path = its ref.path, props = its properties }
--   { op = "crash" }   -> (sent, not requested) raises, so it goes down with "error: ..."
--   { op = "stop" }    -> stops with reason "normal"
--   { seq = n }        -> counted; "count" -> how many of those came, and
--                         whether their seqs came in order 1, 2, 3...
return function(context)
  local count, in_order = 0, true
  context:on_message(function(msg)
    if type(msg) == "table" and msg.seq then
      count = count + 1
      if msg.seq ~= count then in_order = false end
      return
    end
    if msg == "count" then return { count = count, in_order = in_order } end
    if msg == "info" then
      local ref = context.isolate_ref
      return { node = ref.node, path = ref.path, props = context:properties() }
    end
    if type(msg) == "table" and msg.op == "crash" then error("crash on purpose") end
    if type(msg) == "table" and msg.op == "stop" then return context:stop("normal") end
    return msg
  end)
end
