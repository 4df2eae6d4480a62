-- APISIX plugin of creditgate: a thin wrapper that maps APISIX's phases onto the OpenResty
-- module (lua-compat/openresty/lib/creditgate) and declares its options as the plugin's
-- JSON schema, with the module's names and defaults (a test checks that they agree).
local core = require("apisix.core")
local creditgate = require("creditgate")

local schema = {
    type = "object",
    properties = {
        pricing_file = { type = "string" },
        scripts_dir = { type = "string" },
        redis_host = { type = "string", default = "127.0.0.1" },
        redis_port = { type = "integer", default = 6379, minimum = 1, maximum = 65535 },
        redis_password = { type = "string" },
        redis_prefix = { type = "string", default = "cg" },
        shards = { type = "integer", default = 16, minimum = 1 },
        pool_size = { type = "integer", default = 64, minimum = 1 },
        keepalive_ms = { type = "integer", default = 60000, minimum = 1 },
        control_poll_ms = { type = "integer", default = 1000, minimum = 1 },
        control_timeout_ms = { type = "integer", default = 200, minimum = 1 },
        kill_switch_file = { type = "string" },
        api_key_cache_ttl_ms = { type = "integer", default = 30000, minimum = 1, maximum = 3600000 },
    },
    required = { "pricing_file", "scripts_dir" },
}

local _M = {
    version = 0.1,
    -- After APISIX's authentication plugins (key-auth is 2500), before proxying.
    priority = 2400,
    name = "creditgate",
    schema = schema,
}

function _M.check_schema(conf)
    return core.schema.check(schema, conf)
end

local configured

function _M.access(conf, ctx)
    if configured ~= conf then
        local options = {}
        for name in pairs(schema.properties) do options[name] = conf[name] end
        creditgate.configure(options)
        creditgate.init_worker()
        configured = conf
    end
    creditgate.access()
end

function _M.header_filter(conf, ctx)
    creditgate.header_filter()
end

function _M.body_filter(conf, ctx)
    creditgate.body_filter()
end

function _M.log(conf, ctx)
    creditgate.log()
end

return _M
