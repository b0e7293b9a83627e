-- A counter isolate, written as a module: the module's value is the entry
-- function, so a cluster can spawn it by name:
--
--   local counter = cluster:spawn_isolate("counter", { start = 10 }, { path = "/counter" })
--   counter:request({ op = "add", n = 5 })   --> 15
--
-- The isolate finds the module through package.path, which it inherits from
-- whoever spawned it.
return function(context)
  local count = context:property("start") or 0

  context:on_message(function(msg)
    if type(msg) ~= "table" then error("a counter takes { op = ... } messages", 0) end
    if msg.op == "add" then
      count = count + (msg.n or 1)
      return count
    elseif msg.op == "get" then
      return count
    elseif msg.op == "add_later" then
      -- Answers after a while, without holding up the worker thread.
      context:sleep(msg.delay or 0.05)
      count = count + (msg.n or 1)
      return count
    end
    error("unknown op " .. tostring(msg.op), 0)
  end)
end
