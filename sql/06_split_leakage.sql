-- creates: split_leakage (one row per normalized text found in more than one split; must be empty)
-- reads:   splits, examples
-- params:  (none)
create or replace table split_leakage as
with joined as (
    select e.text_norm, s.split
    from splits s
    join examples e on e.example_id = s.example_id
)

select
    text_norm,
    count(distinct split) as n_splits,
    count(*) as n_examples,
    min(split) as first_split,
    max(split) as last_split
from joined
group by text_norm
having count(distinct split) > 1
