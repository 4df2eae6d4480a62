-- Kong plugin handler of creditgate: a thin wrapper that maps Kong's phases onto the
-- OpenResty module (lua-compat/openresty/lib/creditgate). All enforcement is the module's;
-- this file only configures it once per worker from the plugin's config and calls it.
local creditgate = require("creditgate")

local CreditgateHandler = {
    -- After authentication plugins (which run at 1000+), so a trusted customer header set by
    -- one of them can be used; before proxying.
    PRIORITY = 900,
    VERSION = creditgate._VERSION,
}

local configured

local function ensure(conf)
    if configured ~= conf then
        local options = {}
        for name in pairs(creditgate.DEFAULTS) do options[name] = conf[name] end
        options.pricing_file, options.scripts_dir = conf.pricing_file, conf.scripts_dir
        options.redis_password, options.kill_switch_file = conf.redis_password, conf.kill_switch_file
        creditgate.configure(options)
        creditgate.init_worker()
        configured = conf
    end
end

function CreditgateHandler:access(conf)
    ensure(conf)
    creditgate.access()
end

function CreditgateHandler:header_filter(conf)
    creditgate.header_filter()
end

function CreditgateHandler:body_filter(conf)
    creditgate.body_filter()
end

function CreditgateHandler:log(conf)
    creditgate.log()
end

return CreditgateHandler
