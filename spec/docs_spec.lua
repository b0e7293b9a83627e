-- The references are kept true: every function docs/c-api.md names is
-- exported by the built library and every one the header declares is
-- documented; every Lua function docs/api.md names exists on a live
-- cluster, ref and context.
local ic = require("isolate_cluster")
local wait = require("support.wait")

local function read(path)
  local f = assert(io.open(path))
  local s = f:read("a")
  f:close()
  return s
end

-- The first column of each table row of a Markdown file.
local function first_cells(text)
  local cells = {}
  for line in text:gmatch("[^\n]+") do
    local cell = line:match("^|%s*(.-)%s*|")
    if cell and not cell:match("^%-+$") then cells[#cells + 1] = cell end
  end
  return cells
end

local function build_dir()
  local host = os.getenv("IC_HOST_BIN")
  return host and host:match("^(.*)/[^/]*$") or "build"
end

describe("docs/c-api.md", function()
  local documented = {}
  for _, cell in ipairs(first_cells(read("docs/c-api.md"))) do
    local name = cell:match("^`(ic_[%w_]+)`$")
    if name then documented[name] = true end
  end

  it("names only functions the built library exports", function()
    local lib = build_dir() .. "/libisolate_cluster.so"
    local p = assert(io.popen("nm -D --defined-only " .. lib .. " 2>&1"))
    local exported = {}
    for line in p:lines() do
      local name = line:match("%s[TW]%s+(ic_[%w_]+)$")
      if name then exported[name] = true end
    end
    p:close()
    local missing = {}
    for name in pairs(documented) do
      if not exported[name] then missing[#missing + 1] = name end
    end
    table.sort(missing)
    assert.is_true(next(documented) ~= nil)
    assert.are.same({}, missing)
  end)

  it("documents every function the header declares", function()
    local header = read("include/isolate_cluster.h")
    local undocumented, n = {}, 0
    for decl in header:gmatch("IC_EXTERN([^;]-%))%s*;") do
      local name = decl:match("([%w_]+)%s*%(")
      n = n + 1
      if not documented[name] then undocumented[#undocumented + 1] = name end
    end
    assert.is_true(n > 30)
    assert.are.same({}, undocumented)
  end)
end)

describe("docs/api.md", function()
  -- { object = { name = true } } for `object:name(` / `object.name` in the
  -- first column of the reference tables.
  local names = {}
  for _, cell in ipairs(first_cells(read("docs/api.md"))) do
    for code in cell:gmatch("`([^`]+)`") do
      local obj, name = code:match("^(%a+)[:.]([%a_][%w_]*)")
      if obj then
        names[obj] = names[obj] or {}
        names[obj][name] = true
      end
    end
  end

  local function missing_on(obj, has)
    local out = {}
    for name in pairs(names[obj] or {}) do
      if not has(name) then out[#out + 1] = obj .. "." .. name end
    end
    table.sort(out)
    return out
  end

  it("names module, cluster and ref functions that exist", function()
    assert.is_truthy(names.cluster and names.ref and names.context and names.ic)
    local c = ic.single_node({ workers = 1 })
    local r = c:spawn_isolate(function(context) context:on_message(function() end) end, nil, { path = "/docs" })
    -- ic.node is documented as present and raising
    assert.are.same({}, missing_on("ic", function(k) return ic[k] ~= nil end))
    -- node: a multi-node field, nil in a single-node cluster
    assert.are.same({}, missing_on("cluster", function(k) return c[k] ~= nil or k == "node" end))
    assert.are.same({}, missing_on("ref", function(k) return r[k] ~= nil or k == "path" or k == "node" end))
    c:shutdown(5)
  end)

  it("names context functions that exist inside an isolate", function()
    local c = ic.single_node({ workers = 1 })
    local wanted = {}
    for k in pairs(names.context) do wanted[#wanted + 1] = k end
    c:spawn_isolate(function(context)
      local missing = {}
      for _, k in ipairs(context:property("names")) do
        if context[k] == nil then missing[#missing + 1] = k end
      end
      table.sort(missing)
      context:property("to"):send(missing)
    end, { names = wanted, to = c.main })
    local missing = wait.receive(c, 10)
    assert.are.same({}, missing)
    c:shutdown(5)
  end)
end)
