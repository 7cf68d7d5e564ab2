-- lib/states: the order lifecycle's state tables (model.OrderState mirrors them).
--
-- TERMINAL never move again; LIVE are the non-terminal states; RELEASING are the
-- terminal states a transition may set (they release what is left of the reservation).
local TERMINAL = {FILLED = true, CANCELED = true, REJECTED = true, EXPIRED = true}
local LIVE = {PENDING_SUBMIT = true, SUBMITTED = true, UNKNOWN = true, PARTIALLY_FILLED = true}
local RELEASING = {CANCELED = true, REJECTED = true, EXPIRED = true}
