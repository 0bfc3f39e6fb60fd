-- GET /hit with 1,000 visitors in turn (requests formatted once, in init); BENCH_SITE names the site.
dofile(os.getenv("BENCH_WRK_DIR") .. "/common.lua")

local reqs, n = {}, 0

function init(args)
   local site = os.getenv("BENCH_SITE")
   for i = 1, 1000 do
      reqs[i] = wrk.format("GET", string.format(
         "/hit?site=%s&vid=visitor-%05d&type=page_view&ca=1&cm=0" ..
         "&url=https%%3A%%2F%%2F%s%%2Fpage%%2F%d%%3Futm_source%%3Dnewsletter%%26utm_campaign%%3Dbench",
         site, i, site, i % 50))
   end
end

function request()
   n = n % 1000 + 1
   return reqs[n]
end
