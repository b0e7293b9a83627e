-- Test harness for multi-node specs: real nats-server processes on loopback
-- ports, node programs (spec/support/nodes/*.lua) as separate lua5.4
-- processes, and the raw-protocol peer spec/support/nats_peer.py. No mock of
-- NATS anywhere: every server a spec talks to is a real nats-server.
--
--   local H = require("support.nats")
--   after_each(H.cleanup)  -- every process started since the last cleanup,
--   teardown(H.cleanup)    -- stopped by its pid, even when the test failed
--
--   local srv = H.start_server()                 -- {pid, port, url, log, ...}
--   local node = H.start_node{ script = "echo", args = { nats = srv.url, cluster = "c1", name = "b" } }
--   H.wait_output(node, "^ready b$")             -- a line the node printed
--   srv:restart()                                -- same port, same config
--
-- Processes. Each process is started by a small bash that stays its parent:
-- bash waits for it, so it is reaped as soon as it ends (this machine's pid 1
-- does not reap orphans) and its exit status is read back. Before any signal
-- the harness checks that the pid is still that bash's child (a pid is never
-- signalled after it could have been reused), and it only ever signals pids it
-- started itself. stop() sends SIGTERM (and SIGCONT, for a stopped process),
-- waits, then SIGKILL after a deadline. If the spec's process itself dies
-- (busted killed by a ctest timeout), a watcher beside each process kills it
-- within about a second, so no server or node outlives the run.
--
-- Ports. nats-server picks free ports itself (port -1) and writes them to a
-- ports file (--ports_file_dir); the harness reads them back. restart() starts
-- the server again on the same ports, with the same configuration.
--
-- Waiting. Everything polls with a deadline (support.wait); a failed wait
-- raises with the process's output, so the spec's failure says what happened.
--
-- Everything here runs in the main state of the spec (a busted process); it
-- holds C functions and must not be captured by an isolate entry function.
local W = require("support.wait")

local M = {}

--- Deadline (seconds) for a server or node to come up, or a process to stop.
M.START_TIMEOUT = 15
M.STOP_TIMEOUT = 5

M.NATS_SERVER = os.getenv("IC_NATS_SERVER") or "nats-server"
-- Debian's python3 has python3-msgpack; a python3 earlier on PATH may not.
M.PYTHON = os.getenv("IC_PYTHON") or "/usr/bin/python3"

local function dirname(p) return (p:match("^(.*)/[^/]*$")) or "." end

local function shell(cmd)
  local p = assert(io.popen(cmd, "r"))
  local out = p:read("a")
  p:close()
  return out
end

local function absolute(p)
  if p:sub(1, 1) == "/" then return p end
  return (shell("pwd"):gsub("%s+$", "")) .. "/" .. p
end

--- This directory (spec/support), absolute.
M.SUPPORT_DIR = absolute(dirname(debug.getinfo(1, "S").source:sub(2)))
M.SPEC_DIR = dirname(M.SUPPORT_DIR)
M.PEER = M.SUPPORT_DIR .. "/nats_peer.py"

function M.quote(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end
local q = M.quote

-- The file's contents, or "" when it cannot be read (a /proc file of a
-- process that ended between the open and the read reads as nothing).
local function read_file(path)
  local f = io.open(path, "rb")
  if not f then return "" end
  local s = f:read("a")
  f:close()
  return s or ""
end
M.read_file = read_file

local function write_file(path, text)
  local f = assert(io.open(path, "wb"))
  f:write(text)
  f:close()
end

-- Polls fn() every 50 ms until it returns a truthy value or `timeout` seconds
-- pass. Returns fn's values, or nil on timeout.
local function poll(fn, timeout)
  return W.wait_until(fn, timeout, 0.05)
end
M.poll = poll

local tmp_dirs = {}

--- A fresh temporary directory (removed by cleanup()).
function M.tmpdir()
  local d = shell("mktemp -d /tmp/ic-nats.XXXXXX"):gsub("%s+$", "")
  assert(d ~= "", "mktemp failed")
  tmp_dirs[#tmp_dirs + 1] = d
  return d
end

-- ---------------------------------------------------------------- processes

local live = {} -- every process started and not yet stopped, in start order
local checked = {} -- processes whose output cleanup() checks (see M.SANITIZER_MARKERS)

--- Lines that a sanitizer runtime (the ASan+UBSan test build preloads it into
--- every lua5.4 it starts) writes when it finds a bug. cleanup() fails when
--- the output of a node program contains one, even if the spec passed: a
--- node that crashed or leaked in its own process must not go unseen.
M.SANITIZER_MARKERS = { "ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error: ",
  "WARNING: ThreadSanitizer" }

--- Marks process p for the sanitizer check in cleanup(); returns p.
function M.check_output(p)
  checked[#checked + 1] = p
  return p
end

local Proc = {}
Proc.__index = Proc

-- /proc/<pid>/stat fields after the command name: state, ppid.
local function proc_stat(pid)
  local s = read_file("/proc/" .. pid .. "/stat")
  if not s or s == "" then return nil end -- gone between open and read: nil
  local state, ppid = s:match("%) (%S) (%d+)")
  return state, tonumber(ppid)
end

-- This Lua process: the owner of everything spawn() starts.
local OWNER = tonumber(read_file("/proc/self/stat"):match("^(%d+)"))
M.OWNER = OWNER

--- Starts argv (a list of words) with env (a table of extra variables,
--- and `unset`, a list of variables to remove) in the background, its stdout
--- and stderr appended to `out`. Returns a process handle. The process does
--- not ignore SIGINT (a background job of a shell otherwise would), and is
--- killed within about a second if this Lua process ends without stopping it.
local function spawn(argv, env, out, label, unset)
  local words = {}
  for _, w in ipairs(argv) do words[#words + 1] = q(w) end
  local envs = { "env" }
  for _, k in ipairs(unset or {}) do envs[#envs + 1] = "-u " .. q(k) end
  local keys = {}
  for k in pairs(env or {}) do keys[#keys + 1] = k end
  table.sort(keys)
  for _, k in ipairs(keys) do envs[#envs + 1] = q(k .. "=" .. env[k]) end
  -- The bash script: start the process; a watcher subshell kills it if this
  -- Lua process disappears without stopping it (busted killed by a
  -- timeout, say), checking first that the pid is still this bash's child;
  -- then wait, wake the watcher through a FIFO (so it ends at once, without
  -- leaving a `sleep` behind) and report the exit status.
  local fifo = out .. ".wake"
  local script = table.concat({
    "exec </dev/null;",
    "rm -f", q(fifo), "&& mkfifo", q(fifo), "&& exec 3<>" .. q(fifo), "&& rm -f", q(fifo), "|| exit 1;",
    "(trap - INT QUIT; exec", table.concat(envs, " "), table.concat(words, " "), ") 3>&- >>" .. q(out), "2>&1 &",
    "pid=$!; echo \"$$ $pid\";",
    "( while kill -0", OWNER, "&& kill -0 $pid; do read -t 1 -u 3 && break; done;",
    "if ! kill -0", OWNER, "; then read -r _ _ _ pp _ < /proc/$pid/stat && [ \"$pp\" = \"$$\" ] && kill -KILL $pid; fi",
    ") >/dev/null 2>&1 & wpid=$!;",
    "wait $pid; st=$?; echo >&3; wait $wpid; echo \"exit=$st\"",
  }, " ")
  -- bash reports a job killed by a signal on its stderr: not ours to print.
  local pipe = assert(io.popen("bash -c " .. q(script) .. " 2>/dev/null", "r"))
  local line = pipe:read("l") or ""
  local shell_pid, pid = line:match("^(%d+) (%d+)$")
  if not pid then
    pipe:close()
    error("could not start " .. table.concat(argv, " ") .. ": " .. line)
  end
  local p = setmetatable({
    pid = tonumber(pid), shell_pid = tonumber(shell_pid), pipe = pipe,
    out = out, label = label or argv[1], argv = argv,
  }, Proc)
  live[#live + 1] = p
  return p
end
M.spawn = spawn

--- True while the process runs (or is stopped by SIGSTOP): it exists, is
--- not a zombie, and is still the child of the bash that started it.
function Proc:alive()
  if self.status then return false end
  local state, ppid = proc_stat(self.pid)
  return state ~= nil and state ~= "Z" and state ~= "X" and ppid == self.shell_pid
end

--- True while the process is stopped (SIGSTOP).
function Proc:paused()
  local state = proc_stat(self.pid)
  return self:alive() and (state == "T" or state == "t")
end

--- Sends signal `sig` ("TERM", "KILL", "STOP", "CONT", "INT"...) to this
--- process only, if it still runs. Returns true if it was sent.
function Proc:signal(sig)
  if not self:alive() then return false end
  return os.execute("kill -s " .. sig .. " " .. self.pid .. " 2>/dev/null") == true
end

-- Collects the exit status once the process has ended (bash has reaped it).
function Proc:_reap()
  if self.status == nil then
    local rest = self.pipe:read("a") or ""
    self.pipe:close()
    self.status = tonumber(rest:match("exit=(%d+)")) or -1
    for i = #live, 1, -1 do
      if live[i] == self then table.remove(live, i) end
    end
  end
  return self.status
end

--- Waits up to `timeout` seconds for the process to end; returns its exit
--- status (128 + n when killed by signal n), or nil if it still runs.
function Proc:wait(timeout)
  if self.status then return self.status end
  if poll(function() return not self:alive() end, timeout or M.STOP_TIMEOUT) then
    return self:_reap()
  end
  return nil
end

--- Stops the process: `sig` (default TERM, plus CONT so that a stopped
--- process sees it), then SIGKILL if it has not ended within `timeout`
--- seconds. Returns its exit status. Idempotent.
function Proc:stop(sig, timeout)
  if self.status then return self.status end
  if self:alive() then
    self:signal(sig or "TERM")
    self:signal("CONT")
    local st = self:wait(timeout or M.STOP_TIMEOUT)
    if st then return st end
    self:signal("KILL")
  end
  if not poll(function() return not self:alive() end, M.STOP_TIMEOUT) then
    error(("%s (pid %d) survived SIGKILL"):format(self.label, self.pid))
  end
  return self:_reap()
end

--- SIGKILL at once; returns the exit status (137).
function Proc:kill()
  return self:stop("KILL", M.STOP_TIMEOUT)
end

--- True once the process has ended.
function Proc:stopped()
  return not self:alive()
end

--- Everything the process wrote to stdout and stderr so far.
function Proc:output()
  return read_file(self.out)
end

--- Waits until a line of the output matches the Lua pattern `pattern`
--- (anchors ^ $ apply to the line). Lines before `from_line` are skipped, so
--- a spec can wait for a second occurrence. Returns the line, its captures,
--- and the index of the next line. Raises with the output on timeout, or at
--- once if the process ends without printing it.
function M.wait_output(p, pattern, timeout, from_line)
  from_line = from_line or 1
  local found
  local function scan()
    local i = 0
    for line in (p:output() .. "\n"):gmatch("([^\n]*)\n") do
      i = i + 1
      if i >= from_line then
        local caps = table.pack(line:match(pattern))
        if caps[1] ~= nil then
          found = { line, caps, i + 1 }
          return true
        end
      end
    end
    return false
  end
  local ok = poll(function() return scan() or not p:alive() end, timeout or M.START_TIMEOUT)
  if not (found or scan()) then
    error(("%s (pid %d) %s without a line matching %q; its output:\n%s"):format(
      p.label, p.pid, ok and "ended" or "timed out", pattern, p:output()), 2)
  end
  return found[1], table.unpack(found[2], 1, found[2].n), found[3]
end
Proc.wait_output = M.wait_output

--- Stops every process started since the last cleanup (newest first), and
--- removes the temporary directories. For after_each and teardown; also
--- usable in a finally. Processes in the list `keep` (e.g. a server shared
--- by a whole file) stay, with their directories, and so do directories
--- named in it. Never raises for a process
--- that is already gone; raises if one survived SIGKILL, or if a node
--- program's output shows a sanitizer error (M.SANITIZER_MARKERS).
function M.cleanup(keep)
  local kept, kept_dirs = {}, {}
  for _, p in ipairs(type(keep) == "table" and keep or {}) do
    if type(p) == "string" then
      kept_dirs[p] = true -- a directory (tls_files().dir, say)
    else
      kept[p] = true
      if p.dir then kept_dirs[p.dir] = true end
    end
  end
  local errs = {}
  for i = #live, 1, -1 do
    local p = live[i]
    if not kept[p] then
      local ok, err = pcall(p.stop, p)
      if not ok then
        errs[#errs + 1] = tostring(err)
        for j = #live, 1, -1 do
          if live[j] == p then table.remove(live, j) end -- reported, not retried forever
        end
      end
    end
  end
  local still = {}
  for _, p in ipairs(checked) do
    if kept[p] then
      still[#still + 1] = p
    else
      local out = p:output()
      for _, marker in ipairs(M.SANITIZER_MARKERS) do
        local at = out:find(marker, 1, true)
        if at then
          errs[#errs + 1] = ("%s (pid %d) reported a sanitizer error:\n%s"):format(
            p.label, p.pid, out:sub(math.max(1, at - 200), at + 3000))
          break
        end
      end
    end
  end
  checked = still
  local dirs = {}
  for _, d in ipairs(tmp_dirs) do
    if kept_dirs[d] then dirs[#dirs + 1] = d else os.execute("rm -rf " .. q(d)) end
  end
  tmp_dirs = dirs
  if #errs > 0 then error(table.concat(errs, "\n"), 2) end
end

--- The processes currently running (for a spec that checks the harness).
function M.live_processes()
  local list = {}
  for _, p in ipairs(live) do list[#list + 1] = p end
  return list
end

-- ---------------------------------------------------------------- servers

local Server = setmetatable({}, { __index = Proc })
Server.__index = Server

local function parse_ports(text)
  local ports = {}
  for key, list in text:gmatch('"(%w+)":%[([^%]]*)%]') do
    ports[key] = list:match('"([^"]+)"')
  end
  return ports
end

local function port_of(url) return tonumber(url and url:match(":(%d+)$")) end

local function route_urls(routes)
  local list = {}
  for _, r in ipairs(routes or {}) do
    if type(r) == "table" then
      assert(r.cluster_port, "a route to a server that has no cluster port")
      list[#list + 1] = ('"nats-route://127.0.0.1:%d"'):format(r.cluster_port)
    else
      list[#list + 1] = ('"%s"'):format(r)
    end
  end
  return list
end

-- The configuration file text for this server's current ports.
function Server:_config_text()
  local o = self.opts
  local lines = {
    ('server_name: "%s"'):format(self.name),
    ('listen: "127.0.0.1:%d"'):format(self.port or -1),
    ('http: "127.0.0.1:%d"'):format(self.monitor_port or -1),
  }
  if o.max_payload then lines[#lines + 1] = ("max_payload: %d"):format(o.max_payload) end
  if o.cluster then
    local c = o.cluster
    lines[#lines + 1] = ('cluster {\n  name: "%s"\n  listen: "127.0.0.1:%d"'):format(
      c.name or "ic-test", self.cluster_port or -1)
    local routes = route_urls(c.routes)
    if #routes > 0 then lines[#lines + 1] = "  routes: [" .. table.concat(routes, ", ") .. "]" end
    lines[#lines + 1] = "}"
  end
  if o.config then lines[#lines + 1] = o.config end
  return table.concat(lines, "\n") .. "\n"
end

function Server:_launch()
  self.config = self.dir .. "/server.conf"
  write_file(self.config, self:_config_text())
  local ports_dir = self.dir .. "/ports"
  os.execute("rm -rf " .. q(ports_dir) .. " && mkdir -p " .. q(ports_dir))
  local argv = { M.NATS_SERVER, "-c", self.config, "--ports_file_dir", ports_dir }
  if self.opts.debug then argv[#argv + 1] = "-DV" end
  for _, a in ipairs(self.opts.args or {}) do argv[#argv + 1] = a end
  -- Without the sanitizer runtime that sanitized test builds preload: the
  -- server is not ours to check (and is not a C program).
  local p = spawn(argv, {}, self.log, "nats-server " .. self.name, { "LD_PRELOAD" })
  self.pid, self.shell_pid, self.pipe, self.status = p.pid, p.shell_pid, p.pipe, nil
  -- The spawned handle is this server now: cleanup() stops it through self.
  for i = #live, 1, -1 do
    if live[i] == p then live[i] = self end
  end
  local ports_file = ports_dir .. "/" .. M.NATS_SERVER:match("[^/]*$") .. "_" .. self.pid .. ".ports"
  local ports = poll(function()
    if not self:alive() then return "dead" end
    local ports = parse_ports(read_file(ports_file))
    if ports.nats and (ports.cluster or not self.opts.cluster) and self:output():find("Server is ready", 1, true) then
      return ports
    end
  end, M.START_TIMEOUT)
  if ports == nil or ports == "dead" then
    local out = self:output()
    pcall(self.stop, self)
    error(("nats-server %s did not become ready (%s); its config:\n%s\nits log:\n%s"):format(
      self.name, ports == "dead" and "it exited" or "timeout", read_file(self.config), out), 3)
  end
  self.url = ports.nats
  self.port = port_of(ports.nats)
  self.monitor_url = ports.monitoring
  self.monitor_port = port_of(ports.monitoring)
  self.cluster_port = port_of(ports.cluster)
end

local server_count = 0

--- Starts a nats-server on 127.0.0.1 and waits until it accepts clients.
--- opts (all optional):
---   name        server name (default "s<N>")
---   config      extra configuration text, appended as is (accounts...)
---   cluster     { name =, routes = { other_server | "nats-route://..." } }:
---               listen for routes; solicit the listed ones
---   max_payload bytes (server default 1 MiB)
---   args        extra command-line arguments; debug = true adds -DV
--- Returns a server: pid, port, url ("nats://127.0.0.1:PORT"), monitor_url,
--- cluster_port, log (path), config (path of its config file), and the
--- process methods (stop, kill, signal, alive, output, wait_output) plus
--- restart() and routes()/wait_routes(n).
function M.start_server(opts)
  opts = opts or {}
  server_count = server_count + 1
  local self = setmetatable({ opts = opts, name = opts.name or ("s" .. server_count) }, Server)
  self.dir = M.tmpdir()
  self.log = self.dir .. "/server.log"
  self.out = self.log
  self.label = "nats-server " .. self.name
  self:_launch()
  return self
end

--- Starts the server again after it stopped (or stops it first), on the same
--- ports with the same configuration. Waits until it accepts clients.
function Server:restart()
  if self:alive() then self:stop() end
  self:_launch()
  return self
end

--- The server's monitoring endpoint `path` (e.g. "/routez") as text.
function Server:monitor(path)
  local code = "import sys, urllib.request\n" ..
      "print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())"
  return shell(("env -u LD_PRELOAD %s -c %s %s 2>&1"):format(M.PYTHON, q(code), q(self.monitor_url .. path)))
end

--- Number of routes this server has to other servers now.
function Server:routes()
  return tonumber(self:monitor("/routez"):match('"num_routes":%s*(%d+)')) or 0
end

--- Waits until this server has at least n routes up (default 1); raises
--- with its log on timeout.
function Server:wait_routes(n, timeout)
  n = n or 1
  if not poll(function() return self:routes() >= n end, timeout or M.START_TIMEOUT) then
    error(("nats-server %s: %d route(s) expected, %d up; its log:\n%s"):format(
      self.name, n, self:routes(), self:output()), 2)
  end
end

--- Number of clients connected to this server now (from /connz).
function Server:connections()
  return tonumber(self:monitor("/connz"):match('"num_connections":%s*(%d+)')) or 0
end

--- Starts two servers joined by a route (the second solicits the first) and
--- waits until the route is up on both. opts as start_server's (same config
--- for both; opts.cluster.name optional). Returns a, b.
function M.start_cluster(opts)
  opts = opts or {}
  local cname = (opts.cluster and opts.cluster.name) or ("ic-test-" .. (server_count + 1))
  local function with(extra)
    local o = {}
    for k, v in pairs(opts) do o[k] = v end
    for k, v in pairs(extra) do o[k] = v end
    return o
  end
  local a = M.start_server(with({ name = opts.name and (opts.name .. "-a") or nil, cluster = { name = cname } }))
  local b = M.start_server(with({ name = opts.name and (opts.name .. "-b") or nil,
    cluster = { name = cname, routes = { a } } }))
  a:wait_routes(1)
  b:wait_routes(1)
  return a, b
end

--- Configuration text for authentication the safe way on nats-server 2.9:
--- users inside a named account, no `authorization` block (with it and a
--- system account, 2.9.10 adds an implicit user without a password:
--- CVE-2023-47090). users: list of { user =, password = }.
function M.auth_config(users, account)
  local list = {}
  for _, u in ipairs(users) do
    list[#list + 1] = ('{ user: "%s", password: "%s" }'):format(u.user, u.password)
  end
  return ("accounts {\n  %s: { users: [ %s ] }\n}"):format(account or "IC", table.concat(list, ", "))
end

--- Makes a small PKI for TLS tests with the openssl command (EC P-256 keys,
--- valid for two days) in a fresh temporary directory: a CA, a server
--- certificate for 127.0.0.1/localhost and a client certificate, both signed
--- by it, and a second CA that signed neither. Returns { dir, ca, server_cert,
--- server_key, client_cert, client_key, other_ca } (paths). Raises with
--- openssl's output if a step fails.
function M.tls_files()
  local d = M.tmpdir()
  local f = {
    dir = d, ca = d .. "/ca.pem", server_cert = d .. "/server.pem", server_key = d .. "/server.key",
    client_cert = d .. "/client.pem", client_key = d .. "/client.key", other_ca = d .. "/other-ca.pem",
  }
  write_file(d .. "/san.ext", "subjectAltName=IP:127.0.0.1,DNS:localhost\n")
  local key = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"
  local steps = {
    ("openssl req -x509 %s -keyout ca.key -out ca.pem -days 2 -subj /CN=ic-test-ca"):format(key),
    ("openssl req -x509 %s -keyout other-ca.key -out other-ca.pem -days 2 -subj /CN=ic-other-ca"):format(key),
    ("openssl req %s -keyout server.key -out server.csr -subj /CN=127.0.0.1"):format(key),
    "openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 2"
      .. " -extfile san.ext",
    ("openssl req %s -keyout client.key -out client.csr -subj /CN=ic-node"):format(key),
    "openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out client.pem -days 2",
  }
  for _, step in ipairs(steps) do
    local out = shell(("cd %s && env -u LD_PRELOAD %s 2>&1; echo \"@@exit=$?\""):format(q(d), step))
    if not out:find("@@exit=0", 1, true) then error("openssl failed: " .. step .. "\n" .. out, 2) end
  end
  return f
end

--- Server configuration text for TLS with the files of tls_files():
--- verify = true also requires and checks client certificates.
function M.tls_config(files, verify)
  return ('tls {\n  cert_file: "%s"\n  key_file: "%s"\n  ca_file: "%s"\n  verify: %s\n  timeout: 5\n}'):format(
    files.server_cert, files.server_key, files.ca, verify and "true" or "false")
end

-- ---------------------------------------------------------------- nodes

--- The environment of a child Lua process: this process's module paths, with
--- spec/ in front so that node programs and their modules (support.*) load.
function M.lua_env(extra)
  local env = {
    LUA_PATH = M.SPEC_DIR .. "/?.lua;" .. package.path,
    LUA_CPATH = package.cpath,
  }
  for k, v in pairs(extra or {}) do env[k] = v end
  return env
end

local node_count = 0

--- Starts `lua5.4 spec/support/nodes/<script>.lua key=value...` as its own
--- process. opts: script (name, without .lua) or path (any script file), args (a table of key =
--- value, passed as key=value words in sorted order, or a list of words),
--- env (extra environment variables), lua (interpreter, default lua5.4).
--- Returns a process handle (pid, stop(sig), kill(), signal(sig),
--- stopped(), output(), wait_output(pattern)) with `name` = args.name.
function M.start_node(opts)
  node_count = node_count + 1
  local script = opts.path or (M.SUPPORT_DIR .. "/nodes/" .. opts.script .. ".lua")
  local argv = { opts.lua or os.getenv("IC_LUA") or "lua5.4", script }
  local args = opts.args or {}
  if #args > 0 then
    for _, a in ipairs(args) do argv[#argv + 1] = tostring(a) end
  else
    local keys = {}
    for k in pairs(args) do keys[#keys + 1] = k end
    table.sort(keys)
    for _, k in ipairs(keys) do
      local v = args[k]
      if type(v) == "table" then v = table.concat(v, ",") end
      argv[#argv + 1] = k .. "=" .. tostring(v)
    end
  end
  local dir = M.tmpdir()
  local label = ("node %s (%s)"):format(tostring(args.name or node_count), opts.script or opts.path)
  local p = spawn(argv, M.lua_env(opts.env), dir .. "/output.txt", label)
  p.name, p.dir = args.name, dir
  return M.check_output(p)
end

-- ---------------------------------------------------------------- the peer

--- Runs spec/support/nats_peer.py with `args` (a list of words) and waits for
--- it (bounded by coreutils timeout: `timeout` seconds, default 60). Returns
--- its combined output and exit status. Runs without the sanitizer runtime
--- that sanitized builds preload: the peer's own leaks are not ours.
function M.peer(args, timeout)
  local words = {}
  for _, a in ipairs(args) do words[#words + 1] = q(a) end
  local out = shell(("env -u LD_PRELOAD timeout %d %s %s %s 2>&1; echo \"@@exit=$?\""):format(
    timeout or 60, M.PYTHON, q(M.PEER), table.concat(words, " ")))
  local status = tonumber(out:match("@@exit=(%d+)%s*$"))
  return (out:gsub("@@exit=%d+%s*$", "")), status
end

--- Starts the peer in the background (a process handle, as start_node's).
function M.start_peer(args)
  local argv = { M.PYTHON, M.PEER }
  for _, a in ipairs(args) do argv[#argv + 1] = a end
  local dir = M.tmpdir()
  local p = spawn(argv, {}, dir .. "/peer.txt", "nats_peer " .. tostring(args[1]), { "LD_PRELOAD" })
  p.dir = dir
  return p
end

-- ---------------------------------------------------------------- misc

local name_count = 0

--- A cluster name no other spec (or earlier run) uses on a shared server.
function M.unique_name(prefix)
  name_count = name_count + 1
  local rnd = shell("od -An -N4 -tx4 /dev/urandom"):gsub("%s", "")
  return ("%s-%s-%d"):format(prefix or "t", rnd, name_count)
end

--- A 50 ms pause: only as the interval of a loop that polls with its own
--- deadline (prefer poll / wait_output, which have one).
function M.pause() W.wait_until(function() return false end, 0.05, 0.05) end

return M
