-- SPEC §3.10 for a path claim (docs/multinode.md, "Claims"): spawn_isolate
-- with an exact path in a multi-node cluster waits for every live node's
-- answer (up to 5 s); in a plain lua5.4 main state Ctrl-C (SIGINT)
-- interrupts that wait, as it does the other blocking calls, and the node
-- goes on. The node that never answers is spec/support/fake_node.py
-- (scenario "silent"); the claimer is spec/support/nodes/claimer_int.lua.
local MN = require("support.multinode")
local H = MN.H

local describe, it, assert, after_each, pending = describe, it, assert, after_each, pending
local _ENV = _G

if MN.skip_under_tsan(describe, pending) then return end

describe("a path claim in the main state", function()
  after_each(function() MN.cleanup() end)

  it("is interrupted by Ctrl-C", function()
    local srv = H.start_server()
    local name = H.unique_name("claimint")
    -- the claimer first (its own /ctl/ path is claimed while it is alone)
    local claimer = H.start_node({ script = "claimer_int",
      args = MN.args(srv, name, "claimer", { wait_for = "mute" }) })
    H.wait_output(claimer, "^waiting$", 30)
    local fake = H.spawn({ H.PYTHON, H.SUPPORT_DIR .. "/fake_node.py", srv.url, name, "mute", "claimer", "silent",
      "/ctl/claimer" }, {}, H.tmpdir() .. "/fake.txt", "fake_node", { "LD_PRELOAD" })
    H.wait_output(fake, "^silent$", 30)
    H.wait_output(claimer, "^claiming$", 30)
    claimer:signal("INT")
    H.wait_output(claimer, "^error: .*interrupted!", 15)
    H.wait_output(claimer, "^alive$", 15)
    assert.is_true(fake:alive())
  end)
end)
