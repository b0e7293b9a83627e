-- For the harness's own spec: a Lua process that starts a probe node through
-- support.nats, prints "probe <pid>" and then waits (up to 10 minutes) for
-- the spec to kill it. The probe must then be killed by the harness's
-- watcher, since nobody is left to stop it.
local H = require("support.nats")
local p = H.start_node({ script = "probe", args = { name = "orphan" } })
H.wait_output(p, "^ready orphan$")
io.stdout:write("probe " .. p.pid .. "\n")
io.stdout:flush()
pcall(H.wait_output, p, "^never printed$", 600)
