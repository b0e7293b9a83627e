-- isolate_cluster: a cluster of Lua 5.4 isolates that talk by copied messages.
-- The C core (isolate_cluster.core) does the work; this module is its front.
local core = require("isolate_cluster.core")

local M = { _VERSION = core._VERSION }

--- Creates a single-node cluster: one process, isolates on a pool of worker
--- threads. opts.workers (default: number of cores), opts.mailbox (default
--- mailbox capacity), opts.time_slice (seconds a handler runs before it is
--- preempted, default 0.002).
function M.single_node(opts)
  if opts ~= nil and type(opts) ~= "table" then
    error("single_node expects an options table or nothing", 2)
  end
  return core.new(opts)
end

--- Multi-node clusters meet through a NATS server; this build has no NATS
--- transport, so asking for one is an error rather than a silent single node.
function M.node(opts)
  error("ic.node: multi-node clusters need the NATS transport, which is not part of this build", 2)
end

return M
