-- isolate_cluster: a cluster of Lua 5.4 isolates that talk by copied messages.
-- The C core (isolate_cluster.core) does the work; this module is its front.
local core = require("isolate_cluster.core")

local M = { _VERSION = core._VERSION }

--- Monotonic seconds (for measuring intervals; not wall-clock time).
M.now = core.now

--- The wire format, for other transports and for storing values:
--- ic.encode(value) -> MessagePack bytes (exactly what a message carries);
--- ic.decode(bytes [, {functions = true}]) -> value. Decoding checks every
--- length and limits depth and size; functions (bytecode) are accepted only
--- when asked for, since loading bytecode from an untrusted source is unsafe.
function M.encode(value, opts)
  if opts ~= nil then
    if type(opts) ~= "table" then error("encode: opts must be a table", 2) end
    core.check_options(opts, "encode") -- none yet: any key is a typo
  end
  return core.encode(value)
end
function M.decode(bytes, opts)
  if opts ~= nil then
    if type(opts) ~= "table" then error("decode: opts must be a table", 2) end
    core.check_options(opts, "decode", "functions")
    -- a flag, not any true value: functions = "false" must not load bytecode
    local f = opts.functions
    if f ~= nil and type(f) ~= "boolean" then
      error("decode: opts.functions must be a boolean, got " .. type(f), 2)
    end
  end
  return core.decode(bytes, opts and opts.functions or false)
end

--- Creates a single-node cluster: one process, isolates on a pool of worker
--- threads. opts.workers (default: number of cores), opts.mailbox (default
--- mailbox capacity), opts.time_slice (seconds a handler runs before it is
--- preempted, default 0.002).
--- opts.logger: where the runtime's log lines go (an isolate's error with
--- its traceback, a failed on_shutdown handler...): nil = stderr, false =
--- nowhere, or a function(text, main_ref) that runs in a logger isolate of
--- its own (path "/isolate_cluster/logger/N", never announced) and gets each
--- line; main_ref is cluster.main, so a test can forward lines to itself.
-- What ic.single_node and ic.node share: the logger and core.new. Errors
-- are raised at the caller of those (level 3), without this file's position.
local create

function M.single_node(opts)
  if opts ~= nil and type(opts) ~= "table" then
    error("single_node: opts must be a table, got " .. type(opts), 2)
  end
  return create(opts, false)
end

function create(opts, node)
  local logger = opts and opts.logger
  if logger ~= nil and logger ~= false and type(logger) ~= "function" then
    error((node and "node" or "single_node") .. ": opts.logger must be a function, false or nil, got "
      .. type(logger), 3)
  end
  local ok, cluster = pcall(core.new, opts, node)
  if not ok then error((tostring(cluster):gsub("^[^\n]-:%d+: ", "")), 3) end
  if logger ~= nil then M.set_logger(cluster, logger) end
  return cluster
end

--- Replaces the log function of a cluster (see single_node's opts.logger).
function M.set_logger(cluster, logger)
  if type(cluster) ~= "userdata" then
    error("set_logger: bad argument #1 (a cluster expected, got " .. type(cluster) .. ")", 2)
  end
  if type(logger) == "function" then
    local main = cluster.main
    core.set_logger(cluster, function(context)
      -- A logger that raises stays the logger: the line it failed on and
      -- its error go to stderr (never back to itself), and the next lines
      -- come to it as before.
      context:on_message(function(text)
        -- nil: another logger has replaced this one, which has written
        -- every line it was sent (src/cluster.c, retire_logger).
        if text == nil then return context:stop() end
        local ok, err = pcall(logger, text, main)
        if not ok then
          local shown = select(2, pcall(tostring, err))
          io.stderr:write(("isolate_cluster: the logger function raised: %s\n(the line: %s)\n")
            :format(tostring(shown), text))
          io.stderr:flush()
        end
      end)
    end)
  elseif logger == nil or logger == false then
    core.set_logger(cluster, logger)
  else
    error("set_logger: the logger must be a function, false or nil, got " .. type(logger), 2)
  end
end

--- Creates this process's node of a multi-node cluster (docs/multinode.md):
--- opts.nats (a server URL or a list of them), opts.cluster (the cluster's
--- name), opts.name (this node's name, unique among the live nodes), and
--- optionally user/password or token, tls = {ca, cert, key}, secret (HMAC
--- key authenticating node traffic), allow_code (accept Lua functions from
--- other nodes; needs secret), connect_timeout (seconds, default 2), and
--- workers, mailbox, time_slice, logger as for single_node.
function M.node(opts)
  if type(opts) ~= "table" then error("ic.node expects an options table", 2) end
  -- Unknown keys (also in opts.tls) are refused by core.new, as single_node's.
  if opts.nats == nil then
    core.check_options(opts, "node", "cluster", "name", "user", "password", "token", "tls", "secret",
      "allow_code", "connect_timeout", "workers", "mailbox", "time_slice", "logger")
    error("opts.nats (a NATS server URL or a list of them) is required", 2)
  end
  return create(opts, true)
end

return M
