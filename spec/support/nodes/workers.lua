-- Node program: joins the cluster and spawns n= (default 3) workers under
-- prefix= (default "/w/", so each gets a unique path). Each worker has the
-- properties { node = <name>, index = i } and answers any request with
-- { node =, index =, path = }. Prints "worker <path>" for each, then
-- "ready <name>".
local common = require("support.nodes.common")
local o = common.parse(arg)
local cluster = common.join(o)
for i = 1, tonumber(o.n or "3") do
  local ref = cluster:spawn_isolate(function(context)
    local p = context:properties()
    context:on_message(function()
      return { node = p.node, index = p.index, path = context.isolate_ref.path }
    end)
  end, { node = o.name, index = i }, { path = o.prefix or "/w/" })
  common.say("worker " .. ref.path)
end
common.serve(cluster, o)
