-- examples/two_nodes.lua as the README runs it: a NATS server and the two
-- nodes as separate processes.
local H = require("support.nats")

local describe, it, assert, after_each, pending = describe, it, assert, after_each, pending
local _ENV = _G

-- See .ci/run: libnats is not instrumented for ThreadSanitizer.
if (os.getenv("IC_SANITIZE") or ""):match("thread") and not os.getenv("IC_TSAN_NATS") then
  describe("examples/two_nodes.lua", function()
    pending("skipped under TSan (libnats is not instrumented); IC_TSAN_NATS=1 runs them")
  end)
  return
end

describe("examples/two_nodes.lua", function()
  after_each(H.cleanup)

  it("delivers the quick start's three messages across two nodes, and both nodes stop", function()
    local srv = H.start_server()
    local example = H.SPEC_DIR .. "/../examples/two_nodes.lua"
    local function start(role)
      return H.spawn({ os.getenv("IC_LUA") or "lua5.4", example, role, srv.url }, H.lua_env(),
        H.tmpdir() .. "/" .. role .. ".txt", "example " .. role)
    end
    local receiver = start("receiver")
    H.wait_output(receiver, "^receiver started on node receiver$")
    local senders = start("senders")
    H.wait_output(receiver, "^receiver node stopped$", 60)
    H.wait_output(senders, "^senders node stopped$", 60)
    local out = receiver:output()
    for _, m in ipairs({ "message from main isolate", "message from sender 1", "message from sender 2" }) do
      assert.is_truthy(out:find("received message: " .. m .. " (from node senders)", 1, true), out)
    end
    assert.equal(0, receiver:wait(15))
    assert.equal(0, senders:wait(15))
  end)
end)
