-- POST /v1/events with the JSON body in BENCH_BODY (a file) and the API key in BENCH_KEY.
dofile(os.getenv("BENCH_WRK_DIR") .. "/common.lua")

local f = assert(io.open(os.getenv("BENCH_BODY"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-Api-Key"] = os.getenv("BENCH_KEY")
