-- Node program: joins the cluster and serves two isolates.
--   /echo     (path: echo_path=) properties { kind = "echo", node = <name>,
--             list = {1, 2, 3}, nested = { a = { b = "c" } } }; answers requests
--             whose message is a table with op:
--               echo  v         -> v
--               fail  why       -> raises "echo failed: <why>" (at the requester)
--               sleep s         -> prints "sleeping <s>", sleeps s seconds,
--                                  then answers "slept"
--               whoami          -> { ref = its ref, node = ref.node, sender = sender }
--               reply_to ref v  -> sends { reply = "via ref", from = its ref, v = v }
--                                  to ref; returns true
--               call ref msg    -> ref:request(msg) and returns its reply
--               blast to n stream -> sends { stream =, seq = 1..n } to `to`
--                                  (each send may wait 10 s for room); returns
--                                  how many were accepted
--               run fn          -> prints "ran function", calls fn (a Lua
--                                  function that came in the message) and
--                                  returns its result
--               ran             -> how many functions "run" has executed
--               crash           -> (sent, not requested) raises, so /echo
--                                  goes down with "error: ... crash on purpose"
--             a plain (not table) message or one without op is answered as is.
--   /counter  (path: counter_path=, mailbox capacity: counter_mailbox=) counts streams { stream =, seq = } sent
--             to it; request { op = "stats", stream = S } -> { count =, last =,
--             dups =, gaps = } (dups: seq <= last seen; gaps: seq > last + 1);
--             other messages are ignored.
-- Prints "ready <name>" once both are spawned. Arguments: see common.lua.
local common = require("support.nodes.common")
local o = common.parse(arg)
local cluster = common.join(o)

local function echo_main(context)
  local ran = 0
  context:on_message(function(msg, sender)
    if type(msg) ~= "table" or msg.op == nil then return msg end
    local op = msg.op
    if op == "echo" then return msg.v end
    if op == "fail" then error("echo failed: " .. tostring(msg.why)) end
    if op == "sleep" then
      io.stdout:write("sleeping " .. tostring(msg.s) .. "\n")
      io.stdout:flush()
      context:sleep(msg.s)
      return "slept"
    end
    if op == "whoami" then
      return { ref = context.isolate_ref, node = context.isolate_ref.node, sender = sender }
    end
    if op == "reply_to" then
      msg.ref:send({ reply = "via ref", from = context.isolate_ref, v = msg.v })
      return true
    end
    if op == "call" then return msg.ref:request(msg.msg, msg.timeout or 5) end
    if op == "blast" then
      local accepted = 0
      for i = 1, msg.n do
        if msg.to:send({ stream = msg.stream, seq = i }, 10) then accepted = accepted + 1 end
      end
      return accepted
    end
    if op == "run" then
      ran = ran + 1
      io.stdout:write("ran function\n")
      io.stdout:flush()
      return msg.fn()
    end
    if op == "ran" then return ran end
    if op == "crash" then error("crash on purpose") end
    error("echo: unknown op " .. tostring(op))
  end)
end

local function counter_main(context)
  local streams = {}
  context:on_message(function(msg)
    if type(msg) ~= "table" then return nil end
    if msg.op == "stats" then
      return streams[msg.stream] or { count = 0, last = 0, dups = 0, gaps = 0 }
    end
    -- Anything else that is not a stream's message (its path subject takes
    -- plain messages from any NATS client) is not counted.
    if msg.stream == nil or math.type(msg.seq) ~= "integer" then return nil end
    local s = streams[msg.stream]
    if not s then
      s = { count = 0, last = 0, dups = 0, gaps = 0 }
      streams[msg.stream] = s
    end
    s.count = s.count + 1
    if msg.seq <= s.last then
      s.dups = s.dups + 1
    else
      if msg.seq > s.last + 1 then s.gaps = s.gaps + 1 end
      s.last = msg.seq
    end
  end)
end

cluster:spawn_isolate(echo_main, { kind = "echo", node = o.name, list = { 1, 2, 3 }, nested = { a = { b = "c" } } },
  { path = o.echo_path or "/echo" })
cluster:spawn_isolate(counter_main, nil,
  { path = o.counter_path or "/counter", mailbox = o.counter_mailbox and tonumber(o.counter_mailbox) or nil })
common.serve(cluster, o)
