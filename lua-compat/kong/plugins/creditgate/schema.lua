-- Kong plugin schema of creditgate: the OpenResty module's options (`creditgate.DEFAULTS`
-- in lua-compat/openresty/lib/creditgate/init.lua), with the same names and defaults. A
-- test checks that the two lists agree.
local typedefs = require("kong.db.schema.typedefs")

return {
    name = "creditgate",
    fields = {
        { protocols = typedefs.protocols_http },
        { config = {
            type = "record",
            fields = {
                { pricing_file = { type = "string", required = true } },
                { scripts_dir = { type = "string", required = true } },
                { redis_host = { type = "string", default = "127.0.0.1" } },
                { redis_port = { type = "integer", default = 6379, between = { 1, 65535 } } },
                { redis_password = { type = "string", referenceable = true } },
                { redis_prefix = { type = "string", default = "cg" } },
                { shards = { type = "integer", default = 16, gt = 0 } },
                { pool_size = { type = "integer", default = 64, gt = 0 } },
                { keepalive_ms = { type = "integer", default = 60000, gt = 0 } },
                { control_poll_ms = { type = "integer", default = 1000, gt = 0 } },
                { control_timeout_ms = { type = "integer", default = 200, gt = 0 } },
                { kill_switch_file = { type = "string" } },
                { api_key_cache_ttl_ms = { type = "integer", default = 30000, between = { 1, 3600000 } } },
            },
        } },
    },
}
