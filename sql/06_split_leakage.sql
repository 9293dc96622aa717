-- creates: split_leakage (one row per normalized text found in more than one split; must be empty)
-- reads:   splits, examples
-- params:  (none)
create or replace table split_leakage as
with joined as (
    select e.text_norm, s.split
    from splits s
    join examples e on e.example_id = s.example_id
),

per_split as (
    -- one row per (text, split) first: counting distinct splits per text is then a plain count
    -- (count(distinct) over every text costs a third more)
    select text_norm, split, count(*) as n_examples
    from joined
    group by text_norm, split
)

select
    text_norm,
    count(*) as n_splits,
    cast(sum(n_examples) as bigint) as n_examples,
    min(split) as first_split,
    max(split) as last_split
from per_split
group by text_norm
having count(*) > 1
