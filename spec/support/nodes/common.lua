-- Shared by the node programs in this directory (each one a lua5.4 script
-- that the multi-node specs start as its own process through
-- support.nats.start_node). Arguments are key=value words:
--
--   nats=URL[,URL...]   the NATS server(s); a list gives the node fail-over
--   cluster=NAME        cluster name
--   name=NAME           node name
--   user= password= token= secret=   credentials and the cluster secret
--   tls_ca= tls_cert= tls_key=       files for opts.tls = { ca =, cert =, key = }
--   allow_code=true     accept Lua functions from other nodes
--   workers=N           worker threads (default 2: the test machine is small)
--   lifetime=S          the node shuts itself down after S seconds (default
--                       120), so a process the spec lost track of never
--                       outlives the test run by much
--   ...                 anything else is for the program itself
--
-- Every node starts a control isolate at /ctl/<name>: a request "ping"
-- answers "pong", and "shutdown" shuts the node down cleanly (its peers see
-- it leave with reason "left"). Lines on stdout are what specs wait for:
--   "ready <name>"          the node is up and its isolates are spawned
--   "node error: <msg>"     ic.node raised (then the process exits with 3)
--   "stopped <name> <ok>"   the node shut down (ok: shutdown's result)
-- Only the SPEC's API is used (ic.node, spawn_isolate, cluster:run...).
local M = {}

io.stdout:setvbuf("line")

--- Writes one line to stdout in a single call (isolates on other threads
--- write too; one call keeps lines whole).
function M.say(...)
  local parts = table.pack(...)
  for i = 1, parts.n do parts[i] = tostring(parts[i]) end
  io.stdout:write(table.concat(parts, " ", 1, parts.n) .. "\n")
  io.stdout:flush()
end

--- key=value arguments as a table (a value "a,b" stays a string; see list()).
function M.parse(argv)
  local o = {}
  for _, a in ipairs(argv) do
    local k, v = a:match("^([%w_]+)=(.*)$")
    if not k then error("node argument must be key=value: " .. a) end
    o[k] = v
  end
  return o
end

--- A comma-separated argument as a list ({} when absent).
function M.list(v)
  local l = {}
  for item in (v or ""):gmatch("[^,]+") do l[#l + 1] = item end
  return l
end

--- The options for ic.node from the arguments.
function M.node_opts(o)
  local urls = M.list(o.nats)
  local opts = {
    nats = #urls == 1 and urls[1] or urls,
    cluster = o.cluster,
    name = o.name,
    workers = tonumber(o.workers or "2"),
  }
  if o.user then opts.user = o.user end
  if o.password then opts.password = o.password end
  if o.token then opts.token = o.token end
  if o.secret then opts.secret = o.secret end
  if o.allow_code == "true" then opts.allow_code = true end
  if o.tls_ca or o.tls_cert then opts.tls = { ca = o.tls_ca, cert = o.tls_cert, key = o.tls_key } end
  return opts
end

local function control_entry(context)
  context:on_message(function(msg)
    if msg == "ping" then return "pong" end
    if msg == "shutdown" then
      context:after(0.05, function() context:shutdown_cluster(10) end)
      return "bye"
    end
    error("control: unknown request " .. tostring(msg))
  end)
end

--- Joins the cluster: ic.node(node_opts(o)) and the control isolate. On an
--- error prints "node error: <msg>" and exits with status 3.
function M.join(o)
  local ic = require("isolate_cluster")
  local ok, cluster = pcall(ic.node, M.node_opts(o))
  if not ok or cluster == nil then
    M.say("node error: " .. tostring(cluster))
    os.exit(3)
  end
  cluster:spawn_isolate(control_entry, nil, { path = "/ctl/" .. o.name })
  return cluster
end

--- Prints "ready <name>", serves until shutdown (or the lifetime ends),
--- shuts down and exits with status 0.
function M.serve(cluster, o)
  M.say("ready " .. o.name)
  cluster:run(tonumber(o.lifetime or "120"))
  local ok = cluster:shutdown(10)
  M.say("stopped " .. o.name .. " " .. tostring(ok))
  os.exit(0)
end

return M
