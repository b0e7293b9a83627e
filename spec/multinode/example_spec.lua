-- examples/two_nodes.lua as the README runs it: a NATS server and the two
-- nodes as separate processes.
local MN = require("support.multinode")
local H = MN.H

local describe, it, assert, after_each, pending = describe, it, assert, after_each, pending
local _ENV = _G

if MN.skip_under_tsan(describe, pending) then return end

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
