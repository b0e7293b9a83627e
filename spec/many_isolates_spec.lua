-- Many isolates at once: a cluster holds tens of thousands of lean isolates
-- alive together and every one of them answers (correctness only: every
-- answer comes, once, from the isolate asked; the resident memory each
-- costs is measured by `bench/bench.lua --only many`), and what one idle
-- isolate holds of Lua heap.
local ic = require("isolate_cluster")
local wait = require("support.wait")

local describe, it, assert, ipairs = describe, it, assert, ipairs
local _ENV = _G

-- Fewer under the sanitizers, valgrind and the GC stress run, which multiply
-- each isolate's memory and time.
local slow = (os.getenv("IC_SANITIZE") or "") ~= "" or os.getenv("IC_VALGRIND") ~= nil
  or (os.getenv("IC_GC_STRESS") or "") ~= ""
local N = slow and 2000 or 20000

describe("memory per isolate", function()
  -- Lua heap bytes (collectgarbage("count"), after full collections) of an
  -- idle echo isolate: what each of very many isolates costs. The bounds
  -- leave room for other Lua 5.4 releases; the runtime's own share is what
  -- they watch (it was 29.4 KB and 27.8 KB when coroutine and the runtime's
  -- context were loaded into every isolate, 22.9 KB and 21.3 KB while the
  -- pump was Lua code loaded into each).
  for _, case in ipairs({ { opts = {}, kb = 13.5 }, { opts = { lean = true }, kb = 12 } }) do
    it((case.opts.lean and "a lean" or "an") .. " idle isolate holds less than " .. case.kb .. " KB of Lua heap",
      function()
        local c = ic.single_node({ workers = 1, logger = false })
        local r = c:spawn_isolate(function(ctx)
          ctx:on_message(function()
            collectgarbage()
            collectgarbage()
            return collectgarbage("count")
          end)
        end, nil, case.opts)
        local kb = r:request("count", 60)
        assert.is_true(c:shutdown(30))
        assert.is_true(kb < case.kb, ("%.2f KB"):format(kb))
      end)
  end
end)

describe("many isolates", function()
  it("keep " .. N .. " lean isolates alive at once, each answering one message", function()
    local c = ic.single_node({ workers = 2, logger = false })
    local entry = function(ctx)
      ctx:on_message(function(i, sender) sender:send({ i, ctx.isolate_ref }) end)
    end
    local refs = {}
    for i = 1, N do refs[i] = c:spawn_isolate(entry, nil, { lean = true }) end
    for i = 1, N do assert.is_true(refs[i]:send(i)) end
    local seen, got = {}, 0
    local deadline = wait.now() + (slow and 600 or 120) -- a bound on a hang, not a timing assertion
    while got < N and wait.now() < deadline do
      local m = c:receive(1)
      if m then
        local i, from = m[1], m[2]
        assert.is_nil(seen[i], "a second answer for message " .. tostring(i))
        assert.equal(refs[i], from)
        seen[i] = true
        got = got + 1
      end
    end
    assert.equal(N, got)
    -- All of them still up together (each has a message handler, so none
    -- ends on its own).
    local st = c:stats({ rows = false })
    assert.is_true(st.isolates >= N)
    assert.is_true(st.spawned >= N)
    assert.is_true(c:shutdown(120))
  end)
end)
